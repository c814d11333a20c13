"""Instruct fine-tuning of the project's own Llama on exported self-instruct triples.

Building blocks (one concern per module): `config` (the recipe's settings), `data` (export files ->
chat-template examples with answer masks), `packing` (rows, batches, doc ids), `rehearsal` (code and prose
mixed in), `infilling` (Code Llama's FIM transform), `loader` (the deterministic data order), `schedule`
and `optim` (AdamW, cosine with warm-up), `checkpointing` (exact resume, HF export), `distributed`
(process groups, FSDP2), `metrics`. The recipe is `train.train(config)`; `launch_ray` runs it on Ray
Train; `cli` is `selfinstruct finetune`.
"""
