"""Decode encoded images where the batch lives, with NVIDIA DALI.

With ``StreamLoader(decode="dali")`` workers read and check samples but ship the
encoded bytes; the main process decodes each batch with one DALI pipeline:
``fn.decoders.image(device="mixed")`` (nvJPEG on the GPU) when the loader's
device is CUDA, ``device="cpu"`` otherwise. A batch DALI cannot decode is
decoded again sample by sample (PIL) to find the bad one, which is then raised
or skipped (replaced by a repeat, flagged ``is_padding``) like any bad input.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import ErrorHandler, StreamError
from .image_codec import decode_image, resize_image


class DaliImageDecoder:
    def __init__(self, device: torch.device, channels: int, resize: tuple[int, int] | None = None,
                 threads: int = 2):
        if channels not in (1, 3):
            raise ValueError(f"decode='dali' handles 1- or 3-channel images, got {channels} channels")
        self.device, self.channels, self.resize, self.threads = device, channels, resize, threads
        self._pipes: dict[int, object] = {}

    def _pipeline(self, capacity: int):
        if capacity in self._pipes:
            return self._pipes[capacity]
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(batch_size=capacity, num_threads=self.threads, device_id=self.device.index or 0 if gpu else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def build():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu",
                                       output_type=types.RGB if self.channels == 3 else types.GRAY)
            if self.resize is not None:
                images = fn.resize(images, resize_y=self.resize[0], resize_x=self.resize[1])
            return images

        pipe = build()
        pipe.build()
        self._pipes[capacity] = pipe
        return pipe

    def __call__(self, batch: dict, handle: ErrorHandler) -> dict:
        encoded = [np.frombuffer(e, dtype=np.uint8) for e in batch.pop("encoded")]
        if not encoded:
            return batch
        capacity = 1 << max(0, (len(encoded) - 1).bit_length())
        try:
            pipe = self._pipeline(capacity)
            pipe.feed_input("encoded", encoded)
            (out,) = pipe.run()
        except RuntimeError:
            self._pipes.pop(capacity, None)       # a DALI pipeline is unusable after an error
            return self._decode_one_by_one(batch, encoded, handle)
        shapes = [tuple(out[i].shape()) for i in range(len(out))]
        for i, shape in enumerate(shapes):
            if shape != shapes[0]:
                handle(StreamError("image_size", f"image size differs from the batch's {shapes[0]} and no "
                                   "resize= was given", shard=batch["urls"][i], key=batch["keys"][i], value=shape))
                return self._decode_one_by_one(batch, encoded, handle)
        dense = out.as_tensor()
        images = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        feed_ndarray(dense, images, cuda_stream=torch.cuda.current_stream(self.device) if self.device.type == "cuda"
                     else None)
        batch["images"] = images.permute(0, 3, 1, 2).contiguous()
        return batch

    def _decode_one_by_one(self, batch: dict, encoded: list[np.ndarray], handle: ErrorHandler) -> dict:
        """Slow path: find the sample DALI refused, raise or replace it (flagged padding)."""
        from PIL import Image

        rows, good = [None] * len(encoded), None
        for i, data in enumerate(encoded):
            try:
                image = decode_image(data.tobytes(), "jpg")
                if image.shape[2] != self.channels:          # match DALI's output_type
                    mode = "RGB" if self.channels == 3 else "L"
                    image = np.asarray(Image.fromarray(image.squeeze(-1) if image.shape[2] == 1 else image)
                                       .convert(mode)).reshape(*image.shape[:2], self.channels)
                if self.resize is not None:
                    image = resize_image(image, self.resize)
                if good is not None and image.shape != rows[good].shape:
                    raise StreamError("image_size", f"image size differs from the batch's {rows[good].shape} and no "
                                      "resize= was given", shard=batch["urls"][i], key=batch["keys"][i], value=image.shape)
                rows[i] = image
                good = i if good is None else good
            except StreamError as e:
                handle(e)
            except Exception as e:
                handle(StreamError("undecodable_image", f"image does not decode: {type(e).__name__}: {e}",
                                   shard=batch["urls"][i], key=batch["keys"][i], value=f"{len(data)} bytes"))
        if good is None:
            raise StreamError("no_samples", "no image of this batch decodes", shard=batch["urls"][0], value=len(encoded))
        padding = batch["is_padding"].clone()
        for i, row in enumerate(rows):
            if row is None:
                rows[i] = rows[good]
                padding[i] = True
        batch["is_padding"] = padding
        batch["images"] = torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).contiguous().to(self.device)
        return batch
