"""What one device spends on each step of a rollout, in process, on the committed bundles:
download from a local HTTP server (Range-capable, the one the tests use), unpack into the
store, load (hashes + signature) and ready the runtime, self-test (32 reference inputs), and
the switch (atomic pointer write + `Worker.switch_model`). No daemon and no broker: the
end-to-end 10-daemon figure is benchmarks/fleet_rollout.py's.

    python benchmarks/fleet_device_steps.py [--repeat 10]

Prints a table and writes benchmarks/results/fleet_device_steps.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "fleet_device_steps.json"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    from medge.edge.bundle import sha256_file
    from medge.edge.config import load_config
    from medge.edge.fleet.controller import entry_for, load_model
    from medge.edge.fleet.download import download
    from medge.edge.fleet.selftest import run_self_test
    from medge.edge.fleet.store import BundleStore
    from medge.edge.worker import ActiveModel
    from tests.assets.make_bundles import INT8, ONNX_INT8
    from tests.fixtures.fleet import FolderServer, make_candidate, make_keys, pack

    class Holder:  # the part of the Worker a switch touches
        def __init__(self, active):
            self.active = active

        def switch_model(self, active):
            previous, self.active = self.active, active
            return previous

    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="medge-fleet-bench-") as workdir:
        work = Path(workdir)
        keys = make_keys(work / "keys")
        config = load_config(flags={"fleet.trusted_operator_keys": str(keys["operator_pub"]),
                                    "signature.trusted_keys": str(keys["bundle_pub"]), "state.dir": str(work / "s")})
        for source in (INT8, ONNX_INT8):
            candidate = make_candidate(source, work / f"{source.name}-v2", version="2", key=keys["bundle"])
            archive = pack(candidate, work / "served")
            sha, size = sha256_file(archive), archive.stat().st_size
            steps: dict[str, list[float]] = {"download": [], "unpack": [], "load": [], "self_test": [], "switch": []}
            with FolderServer(archive.parent) as server:
                for attempt in range(args.repeat):
                    store = BundleStore(work / f"store-{source.name}-{attempt}")
                    marks = [time.perf_counter()]
                    got = download(server.url_of(archive), store.archive_path(sha), sha256=sha, size=size)
                    marks.append(time.perf_counter())
                    folder = store.install(got, sha)
                    marks.append(time.perf_counter())
                    model = load_model(folder, config)
                    marks.append(time.perf_counter())
                    result = run_self_test(model.classifier)
                    assert result is not None and result.passed, result
                    marks.append(time.perf_counter())
                    holder = Holder(ActiveModel(classifier=None, bundle=None, info={}))
                    entry = entry_for(model.bundle, model.classifier.artifact, store)
                    store.activate(entry, entry, "bench", f"c{attempt}")
                    holder.switch_model(model)
                    marks.append(time.perf_counter())
                    for name, start, end in zip(steps, marks, marks[1:]):
                        steps[name].append((end - start) * 1000.0)
            figures[source.name] = {"archive_bytes": size, **{name: values for name, values in steps.items()}}
    summary = {name: {step: round(statistics.median(values), 2) for step, values in data.items()
                      if isinstance(values, list)} for name, data in figures.items()}
    for data in summary.values():
        data["total"] = round(sum(data.values()), 2)
    report = {"benchmark": "fleet_device_steps", "repeat": args.repeat, "median_ms": summary,
              "archive_bytes": {name: data["archive_bytes"] for name, data in figures.items()},
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    print(f"{'bundle':<22}" + "".join(f"{step:>11}" for step in next(iter(summary.values()))))
    for name, data in summary.items():
        print(f"{name:<22}" + "".join(f"{value:>9.1f}ms" for value in data.values()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
