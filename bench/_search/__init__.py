"""The parts of bench/search_latency.py: its data, the ranking table, the server runs and the
load run; ``common`` holds what they share (constants, a measured series, the machine watch).
"""
