"""Controllers deployed against the CSTR over OPC UA, clean and with faults -> results/deploy/."""

from lipctl.bench.deploy import main

if __name__ == "__main__":
    main()
