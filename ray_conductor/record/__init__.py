"""Recording a workload: ask live workers every question of a questions file, judge their
answers, and write a records table (`records:PATH` pools read it; README "Your own
workload").

Owns: the questions file (`questions`), the resumable answer store and the dollar estimate
(`store`), the recorder, a pure asyncio core over any `WorkerPool` that keeps to a budget and
stops cleanly (`recorder`), the records it writes (`output`), and `ray-conductor record`
(`command`, the only module that starts Ray and builds the worker proxies).
Must not import: training (rl, lite), policy, serving or online code.
"""
