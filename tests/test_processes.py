"""keras_ckpt.processes: the one seam for processes, and callbacks that ask it rather than
inspect store classes. Several real processes are tested in test_multiprocess.py."""

import ast
import os
import pathlib
import warnings

import pytest

import keras_ckpt
from keras_ckpt import processes
from keras_ckpt.records import MANIFEST_NAME
from keras_ckpt.store import CheckpointStore, FollowerStore, Store
from keras_ckpt.triggers import IntervalTrigger

PACKAGE = pathlib.Path(keras_ckpt.__file__).parent
CALLBACKS = PACKAGE / "callbacks"
# How JAX and torch.distributed tell processes apart and gather across them.
BACKEND_PROCESS_API = {
    "multihost_utils",
    "process_allgather",
    "broadcast_one_to_all",
    "torch.distributed",
    "get_rank",
    "get_world_size",
    "process_count",
    "process_index",
}

# 1. One process: every answer is local ------------------------------------------------------


def test_one_process_is_the_writer_and_agrees_with_itself():
    assert processes.process_count() == 1
    assert processes.process_index() == 0
    assert processes.is_writer()
    assert processes.any_process(True, False) == (True, False)
    assert processes.any_process() == ()
    assert processes.chief_text("0123abcd") == "0123abcd"


@pytest.mark.parametrize("every_seconds", [None, 60.0])
@pytest.mark.parametrize("due", [True, False])
@pytest.mark.parametrize("signalled", [None, True, False])
def test_one_process_agrees_on_a_save_as_it_sees_it(every_seconds, due, signalled):
    trigger = IntervalTrigger(every_steps=2, every_seconds=every_seconds)
    agreed = processes.agree_on_save(trigger, due, signalled)
    assert agreed == (due, bool(signalled))
    assert (agreed.due, agreed.signalled) == (due, bool(signalled))


class FakeCoordinationClient:
    """JAX's coordination client as ``wait_at_barrier`` sees it: records each barrier, and
    raises what JAX raises on a timeout when told to."""

    def __init__(self, fails=False):
        self.barriers = []
        self.fails = fails

    def wait_at_barrier(self, barrier_id, timeout_in_ms):
        self.barriers.append((barrier_id, timeout_in_ms))
        if self.fails:
            raise RuntimeError(
                f"DEADLINE_EXCEEDED: Barrier timed out. Id: {barrier_id}::0. This usually "
                "happens because a task triggered the barrier too early or too slowly.\nmore"
            )


@pytest.fixture
def two_processes(monkeypatch):
    """This process as one of two (nothing collective is called), with no barrier yet."""
    monkeypatch.setattr(processes, "process_count", lambda: 2)
    monkeypatch.setattr(processes, "_meetings", {})
    monkeypatch.setattr(processes, "_warned_without_barrier", False)


def test_one_process_waits_for_no_one(monkeypatch):
    monkeypatch.setattr(processes, "_coordination_client", FakeCoordinationClient)
    assert processes.wait_for_every_process("load", 1.0) is None


def test_each_wait_is_a_new_barrier_numbered_per_purpose(two_processes, monkeypatch):
    client = FakeCoordinationClient()
    monkeypatch.setattr(processes, "_coordination_client", lambda: client)
    assert processes.wait_for_every_process("load", 2.5) is None
    assert processes.wait_for_every_process("load", 0.0001) is None
    assert processes.wait_for_every_process("other", 60) is None
    assert client.barriers == [
        ("keras_ckpt/load/0", 2500),
        ("keras_ckpt/load/1", 1),  # at least a millisecond
        ("keras_ckpt/other/0", 60000),
    ]
    client.fails = True  # a call that gave up is counted too
    assert processes.wait_for_every_process("load", 1) == "DEADLINE_EXCEEDED: Barrier timed out"
    assert client.barriers[-1] == ("keras_ckpt/load/2", 1000)


def test_without_a_barrier_in_jax_waiting_warns_once_and_goes_on(two_processes, monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setattr(processes, "_coordination_client", lambda: None)
    with pytest.warns(UserWarning, match=r"has no barrier with a timeout .*arrived to load"):
        assert processes.wait_for_every_process("load", 1.0) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert processes.wait_for_every_process("load", 1.0) is None


def test_the_barrier_probe_takes_jax_s_client_only_if_it_has_wait_at_barrier(monkeypatch):
    pytest.importorskip("jax")
    from jax._src import distributed, lib

    # The class of the client jax.distributed.initialize creates, in this JAX release.
    runtime = getattr(lib, "_jax", None) or lib.xla_extension
    assert callable(runtime.DistributedRuntimeClient.wait_at_barrier)
    client = FakeCoordinationClient()
    monkeypatch.setattr(distributed.global_state, "client", client)
    monkeypatch.setattr(processes.keras.backend, "backend", lambda: "tensorflow")
    assert processes._coordination_client() is None  # not the JAX backend
    monkeypatch.setattr(processes.keras.backend, "backend", lambda: "jax")
    assert processes._coordination_client() is client
    monkeypatch.setattr(distributed.global_state, "client", object())
    assert processes._coordination_client() is None
    monkeypatch.setattr(distributed.global_state, "client", None)  # not initialized
    assert processes._coordination_client() is None


# 2. The store interface: a follower is a Store, not a CheckpointStore -----------------------


def test_a_follower_shares_the_interface_not_the_writing_class(tmp_path):
    with pytest.raises(TypeError, match="abstract"):
        Store()
    follower = FollowerStore(tmp_path)
    writer = CheckpointStore(tmp_path)
    assert isinstance(follower, Store) and isinstance(writer, Store)
    assert not isinstance(follower, CheckpointStore)
    assert (writer.writes, follower.writes) == (True, False)
    writer.close()


def test_the_writer_opens_the_real_store_and_another_rank_a_follower(tmp_path, monkeypatch):
    store = processes.open_store(str(tmp_path / "chief"))
    assert isinstance(store, CheckpointStore) and store.writes
    store.close()
    # A torch.distributed rank other than 0 (one process as far as collectives go).
    monkeypatch.setattr(processes, "process_index", lambda: 1)
    assert not processes.is_writer()
    follower = processes.open_store(str(tmp_path / "rank1"))
    assert isinstance(follower, FollowerStore) and not follower.writes
    assert not (tmp_path / "rank1").exists()


def test_a_callback_of_another_rank_takes_the_same_decisions_and_writes_nothing(
    tmp_path, monkeypatch, make_model, data, scripted
):
    x, y = data

    def train(directory):
        best = keras_ckpt.BestCheckpoint(directory, monitor="val_loss", top_k=2)
        history = make_model().fit(
            x, y, epochs=4, verbose=0, callbacks=[scripted([0.5, 0.7, 0.3, 0.4]), best]
        )
        events = {k: v for k, v in history.history.items() if k.startswith("ckpt/")}
        kept = [(r.filename, r.epoch, r.metrics["val_loss"]) for r in best.kept]
        return events, kept, os.path.basename(best.best_path)

    written = train(tmp_path / "chief")
    events, kept, best = written
    assert events["ckpt/best_deleted"] == [0, 0, 1, 1]
    assert [epoch for _, epoch, _ in kept] == [3, 4]
    monkeypatch.setattr(processes, "process_index", lambda: 1)
    assert train(tmp_path / "rank1") == written  # the same saves, drops, names and best
    assert not (tmp_path / "rank1").exists()  # no file, no directory, no lock
    assert {best, MANIFEST_NAME} <= set(os.listdir(tmp_path / "chief"))


# 3. The callbacks ask questions; they never check classes or reach processes themselves -------


def _names(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return found


@pytest.mark.parametrize("path", sorted(CALLBACKS.glob("*.py")), ids=lambda p: p.name)
def test_callbacks_ask_the_seam_instead_of_checking_store_classes(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = _names(tree)
    # No follower class, no backend's process API: those stay behind keras_ckpt.processes.
    assert not names & {"FollowerStore", *BACKEND_PROCESS_API}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            assert not any(n.endswith("Store") for n in _names(node.args[1])), ast.unparse(node)


def test_processes_are_answered_in_one_module():
    defined = {
        node.name: path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
        and node.name
        in {"process_index", "process_count", "any_process", "chief_text", "agree_on_save"}
    }
    assert set(defined.values()) == {"processes.py"}
