"""`lineguard demo fleet`: a whole fleet on one machine (broker, cloud, two lines).

The umbrella package may use both sides, but this orchestration starts every part as a
subprocess through its own CLI (`lineguard cloud ...`, `lineguard appliance ...`), so
neither appliance/ nor cloud/ imports the other, and what runs is what a plant runs.
"""
