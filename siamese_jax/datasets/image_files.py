"""Image files (PNG, JPEG, anything Pillow reads) as model inputs, the way a dataset's loader makes its own.

Each dataset module says how with `input_form(data_config)`; `datasets.input_form` finds it by the config's
dataset name, so the pair tools and the embedding database read a user's files as training read its images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, UnidentifiedImageError

from siamese_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class InputForm:
  """How a dataset's image files become model inputs."""

  size: int  # side of the square input
  channels: int  # 1 (grayscale) or 3 (RGB)
  invert: bool  # the files are dark on light and are inverted to put the background at 0
  shrink: Image.Resampling = Image.Resampling.BILINEAR  # the loader's filter when making images smaller


def read_image(path: str) -> Image.Image:
  """The decoded image file at `path`; a missing or unreadable file is a UserError."""
  try:
    with Image.open(path) as image:
      return image.copy()  # decodes now: a truncated file fails here, not later
  except FileNotFoundError:
    raise UserError(f'image file {path} not found') from None
  except UnidentifiedImageError:
    raise UserError(f'{path} is not an image file that Pillow can read') from None
  except OSError as e:
    raise UserError(f'cannot read image file {path}: {e}') from None


def to_model_input(image: Image.Image, form: InputForm) -> np.ndarray:
  """uint8 [size, size, channels] with the background at 0, as the run's training images were loaded.

  A transparent background is first filled with the dataset's own background colour (white for files
  that are dark on light), which a plain mode conversion would turn black.
  """
  if 'A' in image.getbands() or 'transparency' in image.info:
    image = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', image.size, 'white' if form.invert else 'black'), image)
  image = image.convert('L' if form.channels == 1 else 'RGB')
  if image.size != (form.size, form.size):
    smaller = form.size < max(image.size)
    image = image.resize((form.size, form.size), form.shrink if smaller else Image.Resampling.BILINEAR)
  pixels = np.asarray(image, np.uint8).reshape(form.size, form.size, form.channels)
  return 255 - pixels if form.invert else pixels


def conversion_note(image: Image.Image, form: InputForm) -> str | None:
  """What `to_model_input` does to a file whose size or channels differ from the model's input, in words."""
  width, height = image.size
  bands = image.getbands()
  colour = image.mode == 'P' or {'R', 'G', 'B'} <= set(bands)
  done = []
  if 'A' in bands or 'transparency' in image.info:
    done.append(f'transparent background filled with {"white" if form.invert else "black"}')
  if colour and form.channels == 1:
    done.append('converted to grayscale')
  elif not colour and form.channels == 3:
    done.append('grayscale copied to the 3 colour channels')
  if width != height:
    done.append(f'stretched to {form.size}x{form.size} (aspect ratio not kept)')
  elif width != form.size:
    done.append(f'resized to {form.size}x{form.size}')
  return f'{width}x{height} {image.mode}: ' + ', '.join(done) if done else None
