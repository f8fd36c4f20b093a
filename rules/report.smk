# The cross-experiment report: results/report/index.html + metrics.csv (+ Snakemake --report).


def report_inputs(wildcards):
    files = []
    for exp in RUN:
        files.append(f"{RESULTS}/{exp}/train/model.safetensors")
        files += [f"{RESULTS}/{exp}/metrics/{ps}.json" for ps in wf.prompt_sets(config, exp)]
        files += [f"{RESULTS}/{exp}/samples/{ps}" for ps in wf.prompt_sets(config, exp)]
    return files


rule report:
    input:
        report_inputs,
    output:
        html=report(f"{RESULTS}/report/index.html", caption="captions/index.rst", category="Report"),
        csv=report(f"{RESULTS}/report/metrics.csv", caption="captions/metrics.rst", category="Metrics"),
    params:
        experiments=lambda wc: [wf.experiment(config, e) for e in RUN],
        datasets=lambda wc: {e: wf.dataset_config(config, wf.experiment(config, e)["dataset"]) for e in RUN},
        cfg=config["report"],
        results=RESULTS,
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=0,
    script:
        "../workflow_scripts/report.py"
