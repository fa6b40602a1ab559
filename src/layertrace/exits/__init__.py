"""layertrace.exits"""
