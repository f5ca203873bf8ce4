"""Everything the pipelines and the daemon read and write: images, videos, previews, exports.

Never imports ``fploopd.engine`` or ``fploopd.daemon``. Limits are passed in by the caller.
"""

from fploopd.media.concat import concat_files, concat_repeat
from fploopd.media.extras import gif_rate, write_gif, write_png_sequence, write_prores, write_webp
from fploopd.media.frames import check_frames, frames_to_tensor, tensor_to_frames
from fploopd.media.image import load_image
from fploopd.media.limits import MediaLimits
from fploopd.media.outputs import OUTPUT_SUFFIXES, output_path, write_outputs
from fploopd.media.preview import latent_preview, latents_to_rgb, save_png_atomic
from fploopd.media.probe import VideoInfo, probe_video
from fploopd.media.read import read_video
from fploopd.media.resize import resize_center_crop
from fploopd.media.write import write_mp4

__all__ = [
    "OUTPUT_SUFFIXES",
    "MediaLimits",
    "VideoInfo",
    "check_frames",
    "concat_files",
    "concat_repeat",
    "frames_to_tensor",
    "gif_rate",
    "latent_preview",
    "latents_to_rgb",
    "load_image",
    "output_path",
    "probe_video",
    "read_video",
    "resize_center_crop",
    "save_png_atomic",
    "tensor_to_frames",
    "write_gif",
    "write_mp4",
    "write_outputs",
    "write_png_sequence",
    "write_prores",
    "write_webp",
]
