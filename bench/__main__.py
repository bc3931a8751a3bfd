"""Run every benchmark in sequence: ``python -m bench`` (``make bench``).

train_speed, peers (four tasks, three seeds, two processes: about 50 minutes on 2 cores), throughput,
fewstep, sde (the SDE sampler against the ODE, about 6 minutes), and memorisation (seed 0: flowmatch before and after issue 17's defaults and ForestFlow on
the finite sets, about 40 minutes), tables (mixed-type tables against ForestFlow), text (the built-in
corpus), manifolds (Riemannian flow matching against Meta's flow_matching and the Euclidean flow,
about 17 minutes), conditions (class-conditional tables and text, about 5 minutes), defaults (flowmatch's
defaults on user-like data: scales, files, sorted and shuffled streams, row counts, callable sources,
small batches; about 25 minutes) and peer_examples (the peers' own example workflows beside flowmatch,
seed 0 here; one (example, seed) took 10 to 25 minutes on 2 shared cores, so its three-seed run,
``python -m bench.peer_examples``, is hours); each prints its Markdown table and writes its results under ``bench/results/``. Everything
runs on one thread per process (OMP_NUM_THREADS=1). fewstep runs with one seed here (its full
three-seed run is about 40 minutes on its own: ``python -m bench.fewstep``); ``--quick`` runs the
peers on two-gaussians with one seed. Not here: ``python -m bench.fewstep_digits`` (MeanFlow on
digits: two U-Nets, about 30 minutes).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="peers on two-gaussians with one seed")
    parser.add_argument(
        "--only",
        default="",
        help="comma separated subset of train_speed,peers,throughput,fewstep,sde,memorisation,tables,text,manifolds,conditions,defaults,"
        "peer_examples",
    )
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    started = time.perf_counter()

    def stage(name, run):
        if only and name not in only:
            return
        print(f"\n== bench.{name} ==", flush=True)
        t = time.perf_counter()
        run()
        print(f"(bench.{name}: {time.perf_counter() - t:.0f} s, load average {os.getloadavg()[0]:.2f})", flush=True)

    from bench import peers, throughput, train_speed

    stage("train_speed", lambda: train_speed.main([]))
    stage("peers", lambda: peers.main(["--tasks", "two-gaussians", "--seeds", "0"] if args.quick else []))
    stage("throughput", throughput.main)
    if importlib.util.find_spec("bench.fewstep") is not None:
        from bench import fewstep

        # fewstep's full run (3 seeds) is about half an hour on its own; one seed keeps make bench near it
        stage("fewstep", lambda: fewstep.main(["--seeds", "0"]))
    from bench import sde

    stage("sde", sde.main)  # the SDE sampler against the ODE: three seeds, about 6 minutes
    from bench import memorisation

    # its full run (three seeds) is python -m bench.memorisation; seed 0 keeps its own result files
    stage("memorisation", lambda: memorisation.main(["--seeds", "0", "--out", "memorisation-seed0"]))
    from bench import tables, text

    stage("tables", tables.main)  # mixed-type tables against ForestFlow: about 40 minutes on 2 cores
    stage("text", text.main)  # the pydoc corpus: about 10 minutes of training, then the NFE curve
    from bench import manifolds

    stage("manifolds", manifolds.main)  # Riemannian flow matching against Meta's: about 17 minutes
    from bench import conditions

    stage("conditions", lambda: conditions.main([]))  # class-conditional tables and text: about 5 minutes
    from bench import defaults

    stage("defaults", lambda: defaults.main([]))  # the defaults on user-like data: about 25 minutes
    from bench import peer_examples

    # the peers' own examples; its full run (three seeds) is python -m bench.peer_examples, seed 0 keeps its own files
    stage("peer_examples", lambda: peer_examples.main(["--seeds", "0", "--out", "peer_examples-seed0"]))
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
