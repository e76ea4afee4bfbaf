"""A test predictor that records what it sees in Redis, under `probe:<tag>:...`. Items steer it: an
item {"fail": N} makes its batch raise on the first N deliveries ("always": every time); {"exit":
X} calls sys.exit(X); {"kill": N} SIGKILLs the pool process on the first N deliveries; {"sleep": S}
sleeps S seconds; {"hold_gil": S} sleeps S seconds in a C call that keeps the GIL; {"oom": N}
allocates memory (config["oom_mib"], default 1024 MiB) on the first N deliveries, touching every
page, so that the kernel's OOM killer kills the pool process when it runs in a memory cgroup with a
lower limit. config["sleep"] sleeps every batch; config["pool"] maps
over a multiprocessing Pool ("fork" or "spawn"); config["prints"] prints a line to stdout and one
to stderr in each batch; config["complete_raises"] makes on_job_complete raise;
config["complete_kills"] SIGKILLs the pool process inside the first on_job_complete of the job
(after recording the call). With config["count_alive"], each `inits` line says how many other
probe predictors of the same API the process held alive then (`alive`: its predictor cache at work);
config["hold_mib"] makes each predictor hold that much memory, every page touched, as a model would.
"""

import ctypes
import gc
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import weakref

import redis

RUNNING_MAX = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


ALIVE = weakref.WeakSet()  # this process's predictors not yet collected


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_id = job_spec["job_id"]
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.key = f"probe:{config['tag']}"
        init = {"job": self.job_id, "pid": os.getpid()}
        if config.get("count_alive"):
            gc.collect()  # an instance the worker dropped is not counted alive
            init["alive"] = len(ALIVE)
            ALIVE.add(self)
        self.model = self._hog(int(config.get("hold_mib", 0)) << 20)
        self.redis.rpush(f"{self.key}:inits", json.dumps(init))
        self.redis.set(f"{self.key}:config:{self.job_id}", json.dumps(config))
        self.redis.set(f"{self.key}:job_spec:{self.job_id}", json.dumps(job_spec))
        time.sleep(float(config.get("init_sleep", 0)))

    def predict(self, payload, batch_id):
        started = time.time()
        logging.getLogger("probe").info("probe predicting batch %s", batch_id)
        if self.config.get("pool"):  # a process pool of its own: "fork" or "spawn"
            with multiprocessing.get_context(self.config["pool"]).Pool(2) as pool:
                self.redis.rpush(f"{self.key}:pool:{self.job_id}", json.dumps(pool.map(abs, [-1, -2])))
        if self.config.get("prints"):
            print("probe prints batch", batch_id)
            print("probe warns", end="", file=sys.stderr)  # a line ended by a later write
            print(" on stderr", file=sys.stderr)
        deliveries = self.redis.hincrby(f"{self.key}:deliveries:{self.job_id}", batch_id, 1)
        self.redis.eval(RUNNING_MAX, 2, f"{self.key}:running:{self.job_id}", f"{self.key}:max:{self.job_id}")
        try:
            self.redis.rpush(f"{self.key}:starts:{self.job_id}", json.dumps({"batch": batch_id, "t": started}))
            for item in payload:
                self._obey(item, deliveries)
            time.sleep(float(self.config.get("sleep", 0)))
        finally:
            self.redis.decr(f"{self.key}:running:{self.job_id}")
        self.redis.rpush(f"{self.key}:done:{self.job_id}", batch_id)

    def _obey(self, item, deliveries):
        if not isinstance(item, dict):
            return
        if "sleep" in item:
            time.sleep(item["sleep"])
        if "hold_gil" in item:  # a C call that keeps the GIL: no thread of this process runs meanwhile
            ctypes.PyDLL(None).sleep(int(item["hold_gil"]))
            self.redis.rpush(f"{self.key}:gil_released:{self.job_id}", json.dumps(time.time()))
        if "kill" in item and (item["kill"] == "always" or deliveries <= item["kill"]):
            self.redis.decr(f"{self.key}:running:{self.job_id}")
            os.kill(os.getpid(), signal.SIGKILL)
        if "oom" in item and (item["oom"] == "always" or deliveries <= item["oom"]):
            self.redis.decr(f"{self.key}:running:{self.job_id}")
            self.redis.rpush(f"{self.key}:oom:{self.job_id}", os.getpid())
            self._hog(int(self.config.get("oom_mib", 1024)) << 20)
        if "fail" in item and (item["fail"] == "always" or deliveries <= item["fail"]):
            raise ValueError(f"probe failure on delivery {deliveries}")
        if "exit" in item:
            sys.exit(item["exit"])

    @staticmethod
    def _hog(size):
        hog = bytearray(size)
        for offset in range(0, size, 4096):  # touch every page: untouched pages take no memory
            hog[offset] = 1
        return hog

    def on_job_complete(self):
        self.redis.rpush(f"{self.key}:complete", self.job_id)
        self.redis.rpush(f"{self.key}:complete_at:{self.job_id}", json.dumps(time.time()))
        time.sleep(self.config.get("complete_sleep", 0))
        if self.config.get("complete_kills") and self.redis.incr(f"{self.key}:complete_kills:{self.job_id}") == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.config.get("complete_raises"):
            raise RuntimeError("on_job_complete exploded")
