"""Start the API: `python run_api.py` (the same as `pao api`)."""

from pao.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["api"]))
