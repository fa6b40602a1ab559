"""layertrace.metrics"""
