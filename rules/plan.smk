# Planning (LayoutLLM): one layouts file per experiment and prompt set, an input of sampling, so a sampling
# knob reruns the drawing, never the (paid, nondeterministic) planning.


rule plan:
    input:
        unpack(stage_inputs("plan")),
    output:
        f"{RESULTS}/{{exp}}/layouts/{{prompt_set}}.jsonl",
    params:
        exp=stage_params("plan"),
    log:
        f"{RESULTS}/logs/{{exp}}/plan_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/plan_{{prompt_set}}.tsv"
    threads: stage_threads("plan")
    priority: experiment_priority
    resources:
        **stage_resources("plan"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/plan.py"
