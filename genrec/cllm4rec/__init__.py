"""CLLM4Rec: user/item tokens in a T5's vocabulary, collaborative and content LMs, an item head
that scores every item in one pass (docs/methods.md, "CLLM4Rec")."""
