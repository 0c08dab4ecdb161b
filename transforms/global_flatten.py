"""Flatten for inputs that are windowed differently (candle timeframes, dead letters of steps in
several windowings): each input moves to the global window first, so the Flatten's inputs share
one windowing, as every runner expects (Beam warns, and Dataflow's Java harness may refuse
otherwise). Nothing downstream of these flattens groups by those windows. Give it a tuple: Beam
applies a transform to a list's elements one by one."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class GlobalFlatten(beam.PTransform):
    def expand(self, collections: tuple[beam.PCollection, ...]) -> beam.PCollection:
        return ([collection | f"Global{i}" >> beam.WindowInto(GlobalWindows())
                 for i, collection in enumerate(collections)]
                | "Flatten" >> beam.Flatten())
