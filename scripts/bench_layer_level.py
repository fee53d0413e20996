"""Each Lipschitz layer family at a level vs the free critic on a Q-scale regression ->
results/layer_level.json."""

from lipctl.bench.layer_level import main

if __name__ == "__main__":
    main()
