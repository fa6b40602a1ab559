"""layertrace.data"""
