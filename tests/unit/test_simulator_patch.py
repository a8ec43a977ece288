"""jobs/simulator.py: FLARE's simulator client runner shares one build-context dict between its threads and sets
its "client_name" just before sending it to each thread's worker; the patched dict keeps that name per thread."""

import argparse
import copy
import pickle
import threading

from consortium.jobs.simulator import PerThreadClientName, patch_simulator


def test_each_thread_pickles_the_client_name_it_set():
    shared = PerThreadClientName({"client_name": None, "other": 1})
    both_set = threading.Barrier(2)
    sent = {}

    def worker(name):
        shared["client_name"] = name
        both_set.wait()  # the race of FLARE 2.9: the other thread has set its name before this one sends
        sent[name] = pickle.loads(pickle.dumps(shared))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("site-a", "site-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent == {"site-a": {"client_name": "site-a", "other": 1}, "site-b": {"client_name": "site-b", "other": 1}}
    assert all(type(d) is dict for d in sent.values())  # the worker gets a plain dict


def test_other_keys_stay_shared_and_copies_are_plain():
    shared = PerThreadClientName({"client_name": "x"})
    shared["client_name"] = "site-a"
    seen = {}

    def other():
        shared["kind"] = "set in another thread"
        seen["name"] = shared["client_name"]

    t = threading.Thread(target=other)
    t.start(), t.join()
    assert seen["name"] == "x"  # a thread that set nothing sees the name the dict was made with
    assert shared["kind"] == "set in another thread" and shared.get("client_name") == "site-a"
    assert copy.deepcopy(shared) == {"client_name": "site-a", "kind": "set in another thread"}


def test_the_patch_wraps_the_runners_build_context():
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorClientRunner

    patch_simulator()
    patch_simulator()  # once only
    args = argparse.Namespace(workspace="/nonexistent", set=[])
    runner = SimulatorClientRunner("", args, [], {}, None, {"client_name": None})
    assert isinstance(runner.build_ctx, PerThreadClientName)
