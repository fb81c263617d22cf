"""The `keraslens` command and `python -m keraslens`."""

import os


def _import_tensorflow_quietly() -> None:
    # TensorFlow's C++ start-up lines (CUDA probing, CPU features, absl's "before
    # InitializeLog" notice) go straight to file descriptor 2 and ignore
    # TF_CPP_MIN_LOG_LEVEL, so the descriptor is pointed at /dev/null for the import.
    # Python errors are raised after it is restored, so nothing a user needs is lost.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main() -> None:
    """Run the command line without TensorFlow's start-up chatter."""
    _import_tensorflow_quietly()
    from keraslens.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
