"""The IP Security Monitor: counters, views, listings, text, exporters, the control socket."""
