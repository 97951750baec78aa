from setuptools import find_packages, setup


def get_version():
    scope = {}
    with open('projects/mod_squad/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(path):
    with open(path) as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith(('#', '-'))]


setup(
    name='mod_squad',
    version=get_version(),
    description='Mod-Squad: a modular mixture-of-experts vision transformer trained '
    'jointly on classification, detection and segmentation with OpenMMLab.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    package_dir={'mod_squad': 'projects/mod_squad'},
    packages=['mod_squad'] + [
        f'mod_squad.{pkg}' for pkg in find_packages('projects/mod_squad')
    ],
    python_requires='>=3.10',
    install_requires=parse_requirements('requirements/runtime.txt'),
    extras_require={'tests': parse_requirements('requirements/tests.txt')},
    license='Apache License 2.0',
)
