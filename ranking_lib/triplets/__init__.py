"""triplets"""
