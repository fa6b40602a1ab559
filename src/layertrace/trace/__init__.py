"""layertrace.trace"""
