"""Teacher logits rows in every ``--logits`` mode (sparse top-k, samples, q-codes, exact): row types and math; imports no other cache room."""
