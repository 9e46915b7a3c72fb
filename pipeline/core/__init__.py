"""What train, generate and evaluate share: checkpoint I/O, stored configs, devices, networks and codes."""
