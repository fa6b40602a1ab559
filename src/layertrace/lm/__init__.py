"""layertrace.lm"""
