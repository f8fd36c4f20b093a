# The cross-experiment report: results/report/index.html + metrics.csv (+ Snakemake --report).


rule report:
    input:
        report_inputs,
    output:
        html=report(f"{RESULTS}/report/index.html", caption="captions/index.rst", category="Report"),
        csv=report(f"{RESULTS}/report/metrics.csv", caption="captions/metrics.rst", category="Metrics"),
    params:
        shown=wf.report_params(config),
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/report.py"
