import torch

from vsr_models.blocks import ResidualBlocksWithInputConv, UpsampleHead, flow_warp, upsample_base


def test_flow_warp_integer_flow_is_a_shift():
    x = torch.rand(2, 3, 8, 10)
    flow = torch.zeros(2, 2, 8, 10)
    flow[:, 0] = 2.0  # sample 2 pixels to the right
    flow[:, 1] = -1.0  # and 1 pixel up
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[:, :, 1:, :-2], x[:, :, :-1, 2:])
    # outside the image: zeros with the default padding, the edge pixel with border padding
    assert out[:, :, 0].abs().max() < 1e-6
    border = flow_warp(x, flow, padding_mode="border")
    torch.testing.assert_close(border[:, :, 0, :-2], x[:, :, 0, 2:])


def test_flow_warp_subpixel_is_bilinear():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    flow = torch.zeros(1, 2, 3, 5)
    flow[:, 0] = 0.25
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[0, 0, 1, :4], torch.tensor([0.25, 1.25, 2.25, 3.25]))


def test_flow_warp_nearest_rounds_to_the_closest_pixel():
    x = torch.rand(1, 2, 6, 6)
    flow = torch.full((1, 2, 6, 6), 0.9)
    out = flow_warp(x, flow, interpolation="nearest", padding_mode="border")
    torch.testing.assert_close(out[:, :, :-1, :-1], x[:, :, 1:, 1:])


def test_residual_blocks_with_input_conv_layout_and_shape():
    blocks = ResidualBlocksWithInputConv(7, 16, num_blocks=3)
    names = {k for k, _ in blocks.named_parameters()}
    assert "main.0.weight" in names and "main.2.2.conv2.bias" in names
    assert blocks(torch.rand(2, 7, 9, 11)).shape == (2, 16, 9, 11)


def test_upsample_head_and_base_are_x4():
    head = UpsampleHead(8)
    assert head(torch.rand(1, 8, 5, 6)).shape == (1, 3, 20, 24)
    lr = torch.rand(1, 3, 5, 6)
    base = upsample_base(lr)
    assert base.shape == (1, 3, 20, 24)
    # bilinear with align_corners False preserves a constant image
    torch.testing.assert_close(upsample_base(torch.full((1, 3, 4, 4), 0.3)), torch.full((1, 3, 16, 16), 0.3))


def test_flow_warp_of_a_bfloat16_flow_keeps_exact_pixel_coordinates():
    # bfloat16 holds integers exactly only up to 256: a grid built in it would move columns 257.. by a pixel
    x = torch.rand(1, 1, 2, 320).to(torch.bfloat16)
    out = flow_warp(x, torch.zeros(1, 2, 2, 320, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    # the float32 warp, rounded (its grid's normalisation leaves ~1e-5 pixel, visible next to large
    # neighbours in bf16's ulp of values near 0.001): every column in place, none moved by a pixel
    assert torch.equal(out, flow_warp(x.float(), torch.zeros(1, 2, 2, 320)).to(torch.bfloat16))
    torch.testing.assert_close(out.float(), x.float(), rtol=0, atol=1e-4)
