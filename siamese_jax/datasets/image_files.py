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
  crop_to_ink: bool = False  # cut the square around the drawing first (`square_around_ink`)


# The border left around the ink by `square_around_ink`, a fraction of the ink's longer side on each side.
INK_MARGIN = 0.03


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
  if form.crop_to_ink:
    image = square_around_ink(image, background=255 if form.invert else 0)
  if image.size != (form.size, form.size):
    smaller = form.size < max(image.size)
    image = image.resize((form.size, form.size), form.shrink if smaller else Image.Resampling.BILINEAR)
  pixels = np.asarray(image, np.uint8).reshape(form.size, form.size, form.channels)
  return 255 - pixels if form.invert else pixels


def square_around_ink(image: Image.Image, background: int) -> Image.Image:
  """The square centred on the bounding box of the pixels far from `background`, its longer side plus
  `INK_MARGIN` on each side, filled with `background` beyond the image.

  Drawers draw a character at different sizes and places on the page; cut this way, every drawing fills
  the model's input, and small inputs keep more of each stroke. A blank image is returned whole.
  """
  gray = np.asarray(image.convert('L'), np.int16)
  ink = np.abs(gray - background) > 127
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  if not len(rows):
    return image
  height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
  side = max(1, round(max(height, width) * (1 + 2 * INK_MARGIN)))
  top = round((rows[0] + rows[-1] + 1 - side) / 2)
  left = round((cols[0] + cols[-1] + 1 - side) / 2)
  square = Image.new(image.mode, (side, side), background if image.mode == 'L' else (background,) * 3)
  square.paste(image, (-left, -top))
  return square


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
