"""rule prepare -> System.prepare."""
from t2i.checkpoints.hashing import write_sha256sums
from t2i.jobs import stage_job
from t2i.systems import get_system
from t2i.utils.atomic import atomic_dir
from t2i.utils.joblog import workflow_job
from t2i.utils.provenance import write_provenance

with workflow_job(snakemake, f"prepare {snakemake.wildcards.exp}"):
    exp, inputs = stage_job(snakemake, "prepare")
    with atomic_dir(snakemake.output[0]) as out:
        get_system(exp["system"]).prepare(exp, inputs, out)
        write_sha256sums(out)
        write_provenance(out, exp, extra={"inputs": {role: str(path) for role, path in inputs.items()}})
