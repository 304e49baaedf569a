"""The load generator: thousands of simulated peers against any IKEv1 gateway."""
