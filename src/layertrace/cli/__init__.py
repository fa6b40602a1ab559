"""layertrace.cli"""
