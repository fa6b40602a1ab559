"""layertrace.readout"""
