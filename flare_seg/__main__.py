"""``python -m flare_seg``: the ``flare-seg`` command."""

from flare_seg.cli import run

if __name__ == "__main__":
    run()
