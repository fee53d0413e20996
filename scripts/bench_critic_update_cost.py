"""Constrained vs plain SAC update cost, side by side -> results/layer_cost.json."""

from lipctl.bench.critic_update_cost import main

if __name__ == "__main__":
    main()
