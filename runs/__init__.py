"""What spans both stages: run folders and batches (between the CLI and the stage packages).

Imports run one way: `cli` -> `runs` -> (`droplet3d`, `recon`); the stage packages never import `runs`.

- `runs.errors`: the user error every module here raises (the CLI prints it as one line, exit code 2).
- `runs.output`: output-folder safety: overlap checks, locks, staging beside --out, free space, publish.
- `runs.progress`: progress bars as plain lines when the output is piped.
- `runs.params`: a command's parameter values -> each stage's options; the prompt.
- `runs.resume`: `run.json` and the fingerprints that decide what is up to date.
- `runs.stages`: `run`'s stages for one run folder (generate, reconstruct), resumable.
- `runs.manifest`: a batch manifest's rows -> checked jobs.
- `runs.batch`: running the jobs (locally or on Ray) and recording batch.json and summary.csv.
"""
