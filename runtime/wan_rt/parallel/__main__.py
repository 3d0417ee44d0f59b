"""`python -m wan_rt.parallel RUN_DIR`: one sequence-parallel rank, started by `wan_rt.parallel.launch`."""
import sys

from wan_rt.parallel.launch import worker_main

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m wan_rt.parallel RUN_DIR (started by wan-rt generate --sp N)")
    sys.exit(worker_main(sys.argv[1]))
