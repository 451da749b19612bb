"""Ray job: serve the conductor on the cluster until the job is stopped (`ray-conductor serve`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/serve.py host=0.0.0.0 api_keys_file=/secrets/keys.txt \
        policy=registry:registries/conductor

Takes the same `config=FILE` and `key=value` arguments as `ray-conductor serve` (defaults:
configs/serve.yaml); the traffic log and relative policy references are under `storage`.
`ray job stop` deletes only this app (never another app on the cluster), flushes its traffic
log and removes its named actors within Ray's stop window (RAY_JOB_STOP_WAIT_TIME_S, 3 s by
default; set it in the runtime env's env_vars for a longer one).
"""

from _entry import run

if __name__ == "__main__":
    run("serve")
