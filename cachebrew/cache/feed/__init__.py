"""Batches for a student: collate, CPU/GPU batch copies, prefetch, the dataset and global batches."""
