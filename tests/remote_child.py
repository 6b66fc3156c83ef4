"""Writes into a remote checkpoint directory from a separate process, for test_remote.py.

Usage:
    python remote_child.py forever URL   commits 1 MB checkpoints, keeping the last 2, until
                                         killed; prints "committed NAME" after each
    python remote_child.py race URL TAG N  commits N checkpoints TAG-<i>; prints "ok NAME",
                                           "conflict NAME" or "error NAME: ..." for each
                                           (every NAME a conflict when the open is refused)
"""

import os
import sys
import warnings

from keras_ckpt import remote

warnings.simplefilter("ignore")
mode, url = sys.argv[1], sys.argv[2]


def commit(store, name, data):
    def write(path):
        with open(path, "wb") as file:
            file.write(data)

    return store.commit(
        name, write, epoch=1, step=1, metrics={}, kind="weights", run="r", keeper="k"
    )


try:
    store = remote.RemoteStore(url)
except remote.ManifestConflictError:
    # Opening settles a pending commit it finds, which in a race is the other writer's commit
    # in flight: the other writer changed the manifest first, so this one is refused whole.
    if mode != "race":
        raise
    tag, count = sys.argv[3], int(sys.argv[4])
    for index in range(count):
        print(f"conflict {tag}-{index:03d}.weights.h5", flush=True)
    sys.exit(0)
if mode == "forever":
    index = 0
    while True:
        name = f"c{index:05d}.weights.h5"
        commit(store, name, os.urandom(1 << 20))
        print(f"committed {name}", flush=True)
        if index >= 2:
            store.release("k", [f"c{index - 2:05d}.weights.h5"])
        index += 1
elif mode == "race":
    tag, count = sys.argv[3], int(sys.argv[4])
    for index in range(count):
        name = f"{tag}-{index:03d}.weights.h5"
        try:
            commit(store, name, os.urandom(1000))
            print(f"ok {name}", flush=True)
        except remote.ManifestConflictError:
            print(f"conflict {name}", flush=True)
        except Exception as error:  # noqa: BLE001 - reported to the test
            print(f"error {name}: {type(error).__name__}: {error}", flush=True)
