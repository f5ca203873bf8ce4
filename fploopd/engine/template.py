"""HunyuanVideo's prompt template, as FramePack uses it (diffusers' DEFAULT_PROMPT_TEMPLATE).

``encode`` wraps every prompt in it; ``tiny`` trains the tiny family's tokenizers on it, so that its
word tokens come out as in Llama 3 and FramePack's crop of the template's 95 tokens holds. A module
of its own so that the tiny builder does not load torch.
"""

PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
