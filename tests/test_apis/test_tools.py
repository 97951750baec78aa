"""tools/demo.py and tools/analysis_tools/routing_map.py on a synthetic image."""
import mmcv


def test_demo_tool_writes_pictures_and_json(load_script, demo_checkpoint, image_file,
                                            tmp_path):
    cfg, checkpoint = demo_checkpoint
    config = tmp_path / 'demo.py'
    cfg.dump(config)
    tool = load_script('tools/demo.py')
    result = tool.main([image_file, str(config), checkpoint, '--task', 'det', 'seg',
                        '--out-dir', str(tmp_path / 'out'), '--device', 'cpu',
                        '--vis-scale', '2'])
    assert set(result['predictions'][0]) == {'det', 'seg'}
    for name in ('shapes', 'shapes_det', 'shapes_seg'):
        picture = mmcv.imread(str(tmp_path / 'out' / 'vis' / f'{name}.png'))
        assert picture.shape == (192, 256, 3), name
    assert (tmp_path / 'out' / 'preds' / 'shapes.json').is_file()


def test_routing_map_tool(load_script, demo_checkpoint, image_file, tmp_path):
    cfg, checkpoint = demo_checkpoint
    config = tmp_path / 'demo.py'
    cfg.dump(config)
    tool = load_script('tools/analysis_tools/routing_map.py')
    out = tmp_path / 'routing.png'
    tool.main([image_file, str(config), checkpoint, '--layer', 'layers.1.ffn',
               '--task', 'cls', 'det', '--out', str(out), '--device', 'cpu'])
    picture = mmcv.imread(str(out))
    assert picture is not None and picture.shape[1] == 2 * 341 + 4
