"""Our SAC loop vs stable-baselines3 SAC on Hopper-v5 -> results/sac_throughput.json."""

from lipctl.bench.sac_throughput import main

if __name__ == "__main__":
    main()
