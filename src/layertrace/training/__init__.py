"""layertrace.training"""
