"""layertrace.report"""
