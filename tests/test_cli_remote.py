"""The `keras-ckpt` command line on remote directories: every command given an fsspec URL, on
checkpoints that real training wrote into a bucket of a real S3 API (moto's server on 127.0.0.1,
through s3fs) or into fsspec's memory://.

Asserted is what a user sees: the lines printed, the exit status, the file export writes, the
objects prune leaves. A remote manifest is as untrusted as a local one: a hostile one is refused
in one line, with nothing read, written or deleted outside the directory.
"""

import hashlib
import json
import os
import uuid
import warnings

import fsspec
import keras
import numpy as np
import pytest
import s3fs
from test_cli import (
    READ_COMMANDS,
    assert_one_error_line,
    keras_ckpt_command,
    run_in_process,
    train_into,
)

import keras_ckpt
from keras_ckpt import remote
from keras_ckpt.records import MANIFEST_NAME


@pytest.fixture(scope="module")
def trained(s3_endpoint):
    """A bucket holding ``run`` (BestCheckpoint top 2 and IntervalCheckpoint last 2, whole
    models) and ``resume`` (ResumeFromLatest weights) from 4 epochs of real training; and the
    training inputs. Tests that change a directory change a copy (``copy_of``)."""
    bucket = f"s3://test-cli-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket[len("s3://") :])
    return bucket, train_into(bucket, epochs=4, keep_last=2)


def objects(url):
    """Every object under ``url`` (a bucket, a directory) with its bytes."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(root)}


def copy_of(url, destination=None):
    """A copy of the remote directory ``url`` (object by object, its manifest included) at
    ``destination``, by default a fresh directory of the same bucket; returns its URL."""
    if destination is None:
        destination = f"{url.rsplit('/', 1)[0]}/copy-{uuid.uuid4().hex[:8]}"
    source_fs, _ = fsspec.core.url_to_fs(url)
    target_fs, _ = fsspec.core.url_to_fs(destination)
    for name in remote.list_names(url):
        data = source_fs.cat_file(source_fs._strip_protocol(f"{url}/{name}"))
        target_fs.pipe_file(target_fs._strip_protocol(f"{destination}/{name}"), data)
    return destination


def put(url, data):
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data.encode() if isinstance(data, str) else data)


def main(capsys, *argv):
    """``keras-ckpt ARGV`` in this process: (exit status, stdout, stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory:// says once that it has no conditional writes
        return run_in_process(capsys, [str(arg) for arg in argv])


# Each command on a directory in the bucket -----------------------------------------------------


def test_ls_lists_the_checkpoints_in_the_bucket(trained, capsys):
    bucket, _ = trained
    url = f"{bucket}/run"
    records = keras_ckpt.list_checkpoints(url)
    code, out, err = main(capsys, "ls", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["FILE", "EPOCH", "STEP", "SIZE", "AGE", "MARKS"]
    assert [line.split()[0] for line in lines[1:]] == [r.filename for r in records]
    marks = {line.split()[0]: line.split()[6].split(",") for line in lines[1:]}  # "23.1 kB"
    assert "best" in marks[keras_ckpt.best_checkpoint(url).filename]
    assert "latest" in marks[keras_ckpt.latest_checkpoint(url).filename]
    code, out, err = main(capsys, "ls", f"{url}/", "--json")  # a trailing slash is fine
    assert code == 0, err
    rows = json.loads(out)
    assert [row["path"] for row in rows] == [f"{url}/{r.filename}" for r in records]


def test_show_prints_a_remote_record_and_its_model_summary(trained, capsys):
    bucket, _ = trained
    best = keras_ckpt.best_checkpoint(f"{bucket}/run")
    code, out, err = main(capsys, "show", f"{bucket}/run", "best")
    assert code == 0, err
    assert best.sha256 in out and f"path           {best.path}" in out
    assert "Total params" in out  # Keras's summary of the downloaded model
    code, out, err = main(capsys, "show", f"{bucket}/resume")
    assert code == 0, err
    assert "finished after 4 epochs" in out and "weights" in out


def test_verify_checks_every_object_then_names_a_damaged_and_a_missing_one(trained, capsys):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    records = keras_ckpt.list_checkpoints(url)
    code, out, err = main(capsys, "verify", url)
    assert code == 0, err
    assert out.splitlines()[-1] == f"all {len(records)} checkpoints verified"
    damaged, missing = records[0], records[1]
    data = bytearray(objects(damaged.path)[damaged.path[len("s3://") :]])
    data[len(data) // 2] ^= 0xFF  # the same size, one byte changed
    put(damaged.path, bytes(data))
    fsspec.core.url_to_fs(missing.path)[0].rm_file(missing.path)
    code, out, err = main(capsys, "verify", url)
    assert code == 1 and not err
    assert f"BAD {damaged.filename}: Checkpoint {damaged.path} does not match" in out
    assert f"BAD {missing.filename}: Checkpoint {missing.path} is missing" in out
    assert out.splitlines()[-1] == f"2 bad: {damaged.filename}, {missing.filename}"


def test_verify_opens_what_it_downloads(s3_bucket, capsys):
    # Intact bytes (the size and SHA-256 its manifest recorded) that are no Keras file.
    url = f"{s3_bucket}/run"
    store = remote.RemoteStore(url)
    for name, data in (("weights.weights.h5", b"not HDF5"), ("model.keras", b"not a zip")):
        store.commit(
            name,
            lambda path, data=data: open(path, "wb").write(data),
            epoch=1,
            step=1,
            metrics={},
            kind="weights" if name.endswith(".h5") else "model",
            run="r",
            keeper="k",
        )
    code, out, _ = main(capsys, "verify", url)
    assert code == 1
    assert "BAD weights.weights.h5: does not open" in out
    assert "BAD model.keras: does not open" in out


def test_prune_dry_run_changes_nothing_and_prune_leaves_what_it_says(trained, capsys):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    records = keras_ckpt.list_checkpoints(url)
    best = keras_ckpt.best_checkpoint(url).filename
    before = objects(bucket)
    code, out, err = main(capsys, "prune", url, "--keep-last", "1", "--dry-run")
    assert code == 0, err
    assert "would delete" in out and "nothing deleted" in out
    assert objects(bucket) == before  # not even a probe object was written
    code, out, err = main(capsys, "prune", url, "--keep-last", "1")
    assert code == 0, err
    kept = [r.filename for r in records if r.filename in {records[-1].filename, best}]
    assert out.splitlines()[-1].startswith(f"deleted {len(records) - len(kept)} ")
    assert [r.filename for r in keras_ckpt.list_checkpoints(url)] == kept
    # What is left is what is listed and the manifest: no probe, no upload, no alias object.
    assert remote.list_names(url) == {*kept, MANIFEST_NAME}
    # Nothing outside the directory changed.
    assert {k: v for k, v in objects(bucket).items() if "/copy-" not in k} == {
        k: v for k, v in before.items() if "/copy-" not in k
    }
    assert main(capsys, "verify", url)[0] == 0


def test_prune_keep_best_by_a_metric(trained, capsys):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    records = keras_ckpt.list_checkpoints(url)
    lowest = min(records, key=lambda r: r.metrics["loss"]).filename
    code, _, err = main(capsys, "prune", url, "--keep-best", "1", "--monitor", "loss")
    assert code == 0, err
    aliased = {keras_ckpt.best_checkpoint(url).filename, keras_ckpt.latest_checkpoint(url).filename}
    assert {r.filename for r in keras_ckpt.list_checkpoints(url)} == {lowest} | aliased
    assert remote.list_names(url) == {lowest} | aliased | {MANIFEST_NAME}


def test_a_killed_writers_leftovers_are_read_as_committed_and_pruned_away(trained, capsys):
    # A writer killed after the server-side copy of its upload and before its committing
    # manifest write: the manifest says "pending", the upload is still there.
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    newest = keras_ckpt.list_checkpoints(url)[-1]
    fs, manifest_path = fsspec.core.url_to_fs(f"{url}/{MANIFEST_NAME}")
    manifest = json.loads(fs.cat_file(manifest_path))
    record = {**manifest["checkpoints"][-1], "file": "epoch009-killed.keras", "epoch": 9}
    upload = f".keras_ckpt-tmp-{uuid.uuid4().hex[:12]}-epoch009-killed.keras"
    data = objects(newest.path)[fsspec.core.url_to_fs(newest.path)[1]]
    put(f"{url}/{upload}", data)
    put(f"{url}/epoch009-killed.keras", data)
    put(
        f"{url}/{MANIFEST_NAME}",
        json.dumps({**manifest, "pending": {"temp": upload, "record": record}}),
    )
    before = objects(url)
    code, out, err = main(capsys, "ls", url)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("epoch009-killed.keras ")
    assert objects(url) == before  # reading settles it in memory only
    code, out, err = main(capsys, "prune", url, "--keep-last", "1")
    assert code == 0, err
    left = {r.filename for r in keras_ckpt.list_checkpoints(url)}
    assert "epoch009-killed.keras" in left
    assert remote.list_names(url) == left | {MANIFEST_NAME}  # the upload is gone too


@pytest.mark.parametrize("damage", ["a kept one corrupted", "a dropped one missing"])
def test_prune_deletes_nothing_from_a_directory_in_doubt(trained, capsys, damage):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    records = keras_ckpt.list_checkpoints(url)
    if damage == "a kept one corrupted":
        victim = keras_ckpt.best_checkpoint(url)
        put(victim.path, b"x" * victim.size)
        message = f"{victim.path} does not match"
    else:
        victim = next(r for r in records if r.filename != keras_ckpt.best_checkpoint(url).filename)
        fsspec.core.url_to_fs(victim.path)[0].rm_file(victim.path)
        message = f"{victim.path} is missing"
    before = objects(url)
    code, out, err = main(capsys, "prune", url, "--keep-last", "1")
    assert_one_error_line("prune", code, out, err)
    assert message in err and "Nothing deleted" in err
    assert objects(url) == before


def test_export_downloads_a_model_that_predicts_like_the_best(trained, capsys, tmp_path):
    bucket, x = trained
    output = tmp_path / "out" / "model.keras"
    code, out, err = main(capsys, "export", f"{bucket}/run", output)
    assert code == 0, err
    best = keras_ckpt.best_checkpoint(f"{bucket}/run")
    assert out == f"exported {best.filename} (epoch {best.epoch}) to {output}\n"
    assert hashlib.sha256(output.read_bytes()).hexdigest() == best.sha256
    exported = keras.saving.load_model(output)  # plain Keras, no keras_ckpt
    expected = keras_ckpt.load_best(f"{bucket}/run").predict(x, verbose=0)
    np.testing.assert_array_equal(exported.predict(x, verbose=0), expected)
    assert sorted(os.listdir(tmp_path / "out")) == ["model.keras"]  # no temporary left


def test_export_refuses_what_it_cannot_export(trained, capsys, tmp_path):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run")
    best = keras_ckpt.best_checkpoint(url)
    put(best.path, b"x" * best.size)
    for argv, message in [
        (["export", f"{bucket}/resume", tmp_path / "w.keras", "--which", "latest"], "weights only"),
        (["export", url, tmp_path / "x.keras"], f"Checkpoint {best.path} does not match"),
        (["export", f"{bucket}/run", f"{bucket}/exported.keras"], "must be a local path"),
        (["export", f"{bucket}/run", "memory://x/exported.keras"], "must be a local path"),
    ]:
        code, out, err = main(capsys, *argv)
        assert_one_error_line("export", code, out, err)
        assert message in err
    assert os.listdir(tmp_path) == []
    assert f"{bucket}/exported.keras"[len("s3://") :] not in objects(bucket)


def test_plot_draws_a_remote_history(trained, capsys, tmp_path):
    bucket, _ = trained
    for directory in ("run", "resume"):
        output = tmp_path / f"{directory}.png"
        code, out, err = main(capsys, "plot", f"{bucket}/{directory}", "-o", output)
        assert code == 0, err
        assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = main(capsys, "plot", f"{bucket}/run", "-o", f"{bucket}/plot.png")
    assert_one_error_line("plot", code, out, err)
    assert "must be a local path" in err


def test_python_m_keras_ckpt_reads_the_bucket_in_a_fresh_process(trained):
    # A fresh process finds the S3 server and the credentials as any boto client would.
    bucket, _ = trained
    result = keras_ckpt_command("ls", f"{bucket}/run")
    assert result.returncode == 0, result.stderr
    best = keras_ckpt.best_checkpoint(f"{bucket}/run").filename
    assert best in result.stdout


def test_memory_urls_and_file_urls_work_too(trained, capsys, tmp_path):
    bucket, _ = trained
    url = copy_of(f"{bucket}/run", f"memory://keras-ckpt-cli/{uuid.uuid4().hex[:8]}/run")
    code, out, err = main(capsys, "verify", url)
    assert code == 0 and "checkpoints verified" in out, err
    code, out, err = main(capsys, "prune", url, "--keep-last", "1")
    assert code == 0, err
    assert remote.list_names(url) == {
        *(r.filename for r in keras_ckpt.list_checkpoints(url)),
        MANIFEST_NAME,
    }
    local = tmp_path / "run"
    local.mkdir()
    for name in remote.list_names(url):
        fs, path = fsspec.core.url_to_fs(f"{url}/{name}")
        (local / name).write_bytes(fs.cat_file(path))
    code, out, err = main(capsys, "ls", f"file://{local}")
    assert code == 0, err
    assert len(out.splitlines()) == 1 + len(keras_ckpt.list_checkpoints(url))


# Wrong URLs: one line on stderr, exit status 2, for every command -------------------------------


def gcsfs_missing():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        return True
    return False


WRONG_URLS = {
    "a '..' part": ("s3://bucket/../run", "a path of plain names"),
    "no path": ("s3://", "a path of plain names"),
    "an empty part": ("s3://bucket//run", "a path of plain names"),
    "a control character": ("s3://bucket/r\x1bun", "a path of plain names"),
    "an unknown protocol": ("nosuchprotocol://bucket/run", "'nosuchprotocol', which fsspec"),
    "a missing bucket": ("s3://no-such-bucket-{id}/run", "no bucket s3://no-such-bucket-"),
    "nothing there": ("{bucket}/nothing", "nothing at s3://"),
    "no manifest": ("{bucket}/notes", "holds no keras_ckpt.json: it is not a directory"),
    "nothing in memory": ("memory://keras-ckpt-cli/{id}", "nothing at memory://"),
}


@pytest.mark.parametrize("command", READ_COMMANDS)
@pytest.mark.parametrize("wrong", WRONG_URLS)
def test_a_wrong_url_is_one_error_line(s3_bucket, capsys, tmp_path, command, wrong):
    put(f"{s3_bucket}/notes/readme.txt", b"not a checkpoint")
    url, message = WRONG_URLS[wrong]
    url = url.format(bucket=s3_bucket, id=uuid.uuid4().hex[:8])
    before = objects(s3_bucket)
    argv = [a.format(dir=url, root=tmp_path) for a in READ_COMMANDS[command]]
    code, out, err = main(capsys, *argv)
    assert_one_error_line(command, code, out, err)
    assert message in err
    assert objects(s3_bucket) == before and os.listdir(tmp_path) == []


@pytest.mark.skipif(not gcsfs_missing(), reason="gcsfs is installed here")
def test_a_protocol_without_its_file_system_names_the_extra(capsys):
    code, out, err = main(capsys, "ls", "gs://bucket/run")
    assert_one_error_line("ls", code, out, err)
    assert 'pip install "keras-ckpt[gcs]"' in err


def test_missing_credentials_are_one_error_line(trained, capsys, without_s3_credentials):
    bucket, _ = trained
    for command in ("ls", "prune"):
        argv = [command, f"{bucket}/run"] + (["--keep-last", "1"] if command == "prune" else [])
        code, out, err = main(capsys, *argv)
        assert_one_error_line(command, code, out, err)
        assert f"cannot read {bucket}/run: NoCredentialsError" in err


# A hostile remote manifest: refused whole, nothing outside the directory touched ---------------


def outside(manifest, **entries):
    return {**manifest, **entries}


def first_record(**fields):
    def change(manifest):
        manifest["checkpoints"][0].update(fields)
        return manifest

    return change


HOSTILE = {  # the change, and what the error names
    "a file outside": (first_record(file="../victim.keras"), "has file='../victim.keras'"),
    "a file in a subfolder": (first_record(file="sub/victim.keras"), "has file='sub/victim"),
    "an absolute file": (first_record(file="/victim.keras"), "has file='/victim.keras'"),
    "a URL as a file": (first_record(file="s3://elsewhere/v.keras"), "has file='s3://elsewhere"),
    "an alias outside": (
        lambda m: outside(m, aliases={"../victim": m["checkpoints"][0]["file"]}),
        "aliases='../victim'",
    ),
    "an alias target outside": (
        lambda m: outside(m, aliases={"best": "../victim.keras"}),
        "has target='../victim.keras'",
    ),
    "trash outside": (
        lambda m: outside(m, trash=["../victim.keras"]),
        "trash[0] has name='../victim.keras'",
    ),
    "pending outside": (
        lambda m: outside(m, pending={"temp": "../victim.keras", "record": m["checkpoints"][0]}),
        "pending has temp='../victim.keras'",
    ),
    "a pending record outside": (
        lambda m: outside(
            m,
            pending={
                "temp": ".keras_ckpt-tmp-000000000000-x.keras",
                "record": {**m["checkpoints"][0], "file": "../victim.keras"},
            },
        ),
        "pending.record has file='../victim.keras'",
    ),
    "not JSON": (lambda m: "{", "is not valid JSON"),
}


@pytest.mark.parametrize("store", ["s3", "memory"])
@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_remote_manifest_is_refused_and_nothing_outside_changes(
    trained, capsys, tmp_path, store, hostile
):
    bucket, _ = trained
    if store == "s3":
        root = f"{bucket}/hostile-{uuid.uuid4().hex[:8]}"
    else:
        root = f"memory://keras-ckpt-cli/{uuid.uuid4().hex[:8]}"
    url = copy_of(f"{bucket}/run", f"{root}/run")
    victim = keras_ckpt.best_checkpoint(url)
    # A real checkpoint beside the directory, under the name the manifest reaches for.
    put(f"{root}/victim.keras", objects(victim.path)[fsspec.core.url_to_fs(victim.path)[1]])
    fs, manifest_path = fsspec.core.url_to_fs(f"{url}/{MANIFEST_NAME}")
    change, named = HOSTILE[hostile]
    changed = change(json.loads(fs.cat_file(manifest_path)))
    put(f"{url}/{MANIFEST_NAME}", changed if isinstance(changed, str) else json.dumps(changed))
    before = objects(root)
    for command, args in READ_COMMANDS.items():
        argv = [a.format(dir=url, root=tmp_path) for a in args]
        code, out, err = main(capsys, *argv)
        assert_one_error_line(command, code, out, err)
        assert f"The manifest {url}/{MANIFEST_NAME}" in err and named in err, err
        assert objects(root) == before
        assert os.listdir(tmp_path) == []
