"""grand-challenge entry point (MIDOG 2025 Track 2): classify /input, write /output.

`python inference.py` is `python -m amf predict`; `--input`, `--output` and `--model` override
the container defaults for local runs. See README.md.
"""

import sys

from amf.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main(["predict", *sys.argv[1:]], predict_prog="inference.py"))
