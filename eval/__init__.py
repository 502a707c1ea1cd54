"""Benchmarks of the paper with open-instruct's protocols (MMLU, BBH, GSM, TyDi QA, HumanEval, + demo).

    eval.tasks       one class per benchmark (load → prompt → parse → score), registry ``get_task``
    eval.backends    ``hf`` (transformers) and ``vllm`` (lazy) behind one generate/logprobs interface
    eval.driver      ``evaluate(tasks, backend, data_dir)`` and ``write_results`` (eval.json + predictions)
    eval.metrics     exact match, SQuAD F1/EM, GSM/BBH answer extraction, unbiased pass@k
    eval.sandbox     sandboxed execution of generated code (HumanEval: a verdict the completion cannot forge)
    eval.checkpoint  base model / adapter checkpoint / merged model resolution

The Hydra entry point is ``python -m recipes.evaluate``.
"""
