"""The SAC update with S seeds stacked against one seed's, side by side ->
results/stacked_update.json."""

from lipctl.bench.stacked_update import main

if __name__ == "__main__":
    main()
