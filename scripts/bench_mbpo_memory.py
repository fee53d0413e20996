"""Peak resident memory of ensemble MBPO vs rollouts per retrain -> results/mbpo_memory.json."""

from lipctl.bench.mbpo_memory import main

if __name__ == "__main__":
    main()
