"""Hugging Face Space entry point: the huggingtweets cyborg UI on a zoo registry.

python spaces/huggingtweets/app.py       # serves the repo's registry.json
HUGGINGTWEETS_REGISTRY=/path/to/registry.json python spaces/huggingtweets/app.py
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # zoo/ and cards/ (a deployed Space holds copies of them beside app.py)
sys.path[:0] = [str(HERE), str(REPO)]  # a Space folder is not a package

import cyborg_ui  # noqa: E402

local = HERE / "registry.json"  # a deployed Space ships its zoo beside app.py
default = local if local.is_file() else REPO / "registry.json"
demo = cyborg_ui.build_demo(os.environ.get("HUGGINGTWEETS_REGISTRY", str(default)))
demo.queue(**cyborg_ui.QUEUE)

if __name__ == "__main__":
    demo.launch(css=cyborg_ui.CSS)
