"""Stage one: everything that runs a teacher.

- :mod:`~cachebrew.teacher.precompute`: ``cachebrew precompute``, the teacher once over a corpus
  into a cache;
- :mod:`~cachebrew.teacher.verify`: ``cachebrew verify``, checksums and (optionally) a re-run of
  the teacher on sampled examples;
- :mod:`~cachebrew.teacher.finetune`: ``cachebrew finetune``, fine-tune a pretrained model into a
  teacher.

Stage two (:mod:`cachebrew.distill`, :mod:`cachebrew.runner`) never imports this package.
"""
